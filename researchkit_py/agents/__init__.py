"""Agents that can run a phase without an LLM."""
