"""The jobs service: the front door where users submit, follow and cancel jobs."""
