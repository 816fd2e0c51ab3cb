"""`python -m vgg16.device_check` keeps working (the command device sessions are given): the check is
vgg16/tools/device_check.py."""

import sys

from .tools.device_check import main

if __name__ == "__main__":
    sys.exit(main())
