"""People judging two configurations blind: rounds, votes and the leaderboard (see :mod:`.rounds`)."""

from .leaderboard import leaderboard, votes_to_settle, wilson
from .rounds import CHOICES, MODES, JudgeConfig, JudgingError, Round, Rounds, UnknownRound, votes_csv

__all__ = ["CHOICES", "MODES", "JudgeConfig", "JudgingError", "Round", "Rounds", "UnknownRound", "leaderboard", "votes_csv", "votes_to_settle", "wilson"]
