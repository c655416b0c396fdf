"""fedkd's ClientApp: local training of the teacher and distillation of the student."""
