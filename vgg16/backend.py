"""Import torch, or say in one line why it cannot be imported when a device backend fails to auto-load.

torch (2.4+) imports the device extensions installed beside it (torch_npu registers itself so) when it is imported.
Without the CANN libraries on the library path -- not installed, or `set_env.sh` not sourced, the most common
Ascend mistake -- `import torch` itself fails with "Failed to load the backend extension: torch_npu" over a long
traceback, before any of our code could run. This check runs first in `vgg16/__init__.py`, so every entry point
(`train_vgg16.py`, `python -m vgg16.*`) says what to do instead.
"""

from __future__ import annotations

import sys


def explain(error: BaseException) -> str:
    message = str(error)
    name = message.split("backend extension:", 1)[-1].split(".")[0].strip() or "a device"
    cause = error.__cause__
    detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
    if name == "torch_npu":
        return (f"torch could not load torch_npu{detail}: the Ascend CANN libraries are not on the library path. "
                "Source your CANN install's set_env.sh first (source /usr/local/Ascend/ascend-toolkit/set_env.sh), "
                "or set TORCH_DEVICE_BACKEND_AUTOLOAD=0 to use this environment on the CPU")
    return (f"torch could not load its {name} backend{detail}; fix that install, or set "
            "TORCH_DEVICE_BACKEND_AUTOLOAD=0 to start torch without it")


def _is_entry_point() -> bool:
    """python train_vgg16.py, or python -m vgg16.X (runpy imports the package while argv[0] is still "-m")."""
    first = sys.argv[0] if sys.argv else ""
    return first == "-m" or first.endswith("train_vgg16.py")


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except RuntimeError as e:
        if "backend extension" not in str(e):
            raise
        if _is_entry_point():
            print(f"error: {explain(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise ImportError(explain(e)) from None
