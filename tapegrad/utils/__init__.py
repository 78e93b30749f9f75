"""tapegrad.utils: hooks (RemovableHandle) and checkpoint, as in torch.utils."""
from . import checkpoint, hooks  # noqa: F401
