"""Developer tools, not needed to train: the benchmark against a plain loop (`benchmark`, `plain_loop`), the device
check and its report (`device_check`, `device_report`), and the test data makers (`photos`, `digits_split`).
Each runs as `python -m vgg16.tools.NAME --help`."""
