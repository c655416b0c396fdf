"""A Flower app for the Byzantine tests and benchmark: fedkd's ServerApp, and fedkd's ClientApp except on the first
k partitions, which attack (byzantine.py). `app` writes one variant, one attack kind and k, to `flwr run`."""

from pathlib import Path

from deploy.processes import APP_PARTS, PROJECT, app_copy
from tests.byzantine_app import byzantine

HERE = Path(__file__).resolve().parent
FEDKD_CLIENTAPP = 'clientapp = "client_app.app:app"'


def pyproject(kind: str, attackers: int) -> str:
    """fedkd's pyproject, so that every run-config key it declares is accepted, with `<kind>_<attackers>` as the
    ClientApp."""
    text = (PROJECT / "pyproject.toml").read_text()
    if FEDKD_CLIENTAPP not in text:
        raise ValueError(f"fedkd's pyproject.toml no longer names its ClientApp as {FEDKD_CLIENTAPP!r}")
    return text.replace(FEDKD_CLIENTAPP, f'clientapp = "byzantine:{kind}_{attackers}"')


def app(dest: Path, kind: str, attackers: int) -> Path:
    """The app under `dest`: fedkd's parts, byzantine.py beside them, and `pyproject(kind, attackers)`."""
    if not isinstance(getattr(byzantine, f"{kind}_{attackers}", None), byzantine.Byzantine):
        raise ValueError(f"no ClientApp {kind}_{attackers} in byzantine.py; kinds: {', '.join(byzantine.ATTACKS)}")
    app_copy(dest, APP_PARTS, pyproject(kind, attackers))
    (dest / "byzantine.py").write_text((HERE / "byzantine.py").read_text())
    return dest
