"""The experiment side: specs, success criteria, the project's research records, phase
prompts, locks and the guard hook, phase logs, and the Python half of experiment.sh."""
