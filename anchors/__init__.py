"""Anchor libraries that cannot live in the main environment, run under their own interpreters (extractors.envs)."""
