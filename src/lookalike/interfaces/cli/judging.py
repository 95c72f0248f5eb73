"""People judging two configurations blind: create a round, read its leaderboard, export its votes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer
import yaml

from ...judging import JudgeConfig, JudgingError, votes_csv
from .common import app, guarded, out, state

judge_app = typer.Typer(help="Judging rounds: people compare two configurations' results blind (pair, dope-or-nope, 1-5 rating).",
                        no_args_is_help=True)
app.add_typer(judge_app, name="judge")


def _config(path: Path) -> JudgeConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise JudgingError(f"{path}: cannot read the configuration ({exc})") from exc
    return JudgeConfig.parse({"name": path.stem, **data} if isinstance(data, dict) else data)


@judge_app.command("create")
def create(
    name: str = typer.Argument(..., help="Round name: letters, digits, '-' and '_'."),
    config: List[Path] = typer.Option(..., "--config", "-c", help="Two configuration files (YAML: name, model, index, nprobe, "
                                                                  "rerank_factor, code_search; lookalike eval's files work)."),
    queries: int = typer.Option(40, min=1, max=500, help="Catalogue products used as queries (a seeded sample)."),
    k: int = typer.Option(8, "-k", "--k", min=1, max=24, help="Results shown per configuration."),
    mode: str = typer.Option("pair", help="pair (left/right/same), single (dope or nope) or rating (1-5)."),
    where: List[str] = typer.Option([], "--where", "-w", help="Only among products matching this filter, repeatable."),
    seed: int = typer.Option(0, help="Seed of the query sample and the side shuffling."),
) -> None:
    """Create a round; judges then open /judge/NAME on the server (signed in with a write key)."""

    def body() -> None:
        if len(config) != 2:
            raise JudgingError("give exactly two --config files")
        with state.engine() as engine:
            created = engine.judging.create(name, [_config(c) for c in config], queries, k, mode, where or None, seed)
        out.print(f"round {created.name}: {len(created.queries)} queries, {created.mode}; judges open /judge/{created.name}", highlight=False)

    guarded(body)


@judge_app.command("leaderboard")
def standings(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Preference (pair) or approval / mean rating per configuration, 95 % intervals, votes still needed."""

    def body() -> None:
        with state.engine() as engine:
            board = engine.judging.standings(name)
        if as_json:
            out.print_json(json.dumps(board))
            return
        for row in board["standings"]:
            score = row.get("preference", row.get("approval", row.get("mean")))
            out.print(f"{row['config']}: {score} (95 % {row['ci'][0]}–{row['ci'][1]})", highlight=False)
        settle = board["votes_to_settle"]
        out.print(f"{board['votes']} votes; " + ("settled" if board["settled"] else f"about {settle} more votes would settle it" if settle
                                                   else "not settled"), highlight=False)

    guarded(body)


@judge_app.command("votes")
def votes(name: str = typer.Argument(...), csv_path: Path = typer.Option(..., "--csv", help="Write every vote to this CSV file.")) -> None:
    """Export a round's votes (query, judge, configurations in the order shown, choice, time)."""

    def body() -> None:
        with state.engine() as engine:
            rows = engine.judging.votes(name)
        csv_path.write_text(votes_csv(rows), encoding="utf-8")
        out.print(f"{len(rows)} votes written to {csv_path}", highlight=False)

    guarded(body)
