"""State shared by many processes: backends that let policies in different processes act as one."""
