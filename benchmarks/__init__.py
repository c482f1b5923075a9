"""The maintained performance benchmarks; each module is a command
(``python -m benchmarks.<name>``), and ``benchmarks.common`` holds what they share."""
