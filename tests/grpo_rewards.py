"""User reward functions for the GRPO tests, named as `grpo_rewards:NAME` (tests/ is on the path)."""


def length_reward(prompt: str, completion: str, answer: str) -> float:
    """A graded reward that varies between random completions: their decoded length."""
    return len(completion) / 10.0


def answer_in_prompt(prompt: str, completion: str, answer: str) -> float:
    """1 when every answer digit appears in the prompt (true for reversal): checks the arguments' order."""
    return float(all(d in prompt for d in answer.split()))


def boom(prompt: str, completion: str, answer: str) -> float:
    raise ZeroDivisionError("no reward today")


def not_a_number(prompt: str, completion: str, answer: str):
    return "high"


def nan_reward(prompt: str, completion: str, answer: str) -> float:
    return float("nan")
