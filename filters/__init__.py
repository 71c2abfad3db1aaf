"""Scores computed once per sample during `build`, and the policy that turns them into keep / reject."""
