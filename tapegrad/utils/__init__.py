"""tapegrad.utils: hooks (RemovableHandle) and checkpoint, as in torch.utils."""
