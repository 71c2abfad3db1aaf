"""The compact LayerFlow model, trained from `manifests/` datasets (arrives with the model issue; empty for now)."""
