"""The tape: flat columns of records, recording, flushing, replay, lifetime."""
