"""A mailbox of 10,000 messages dropped into the notes folder: the sensor's ticks, registering it, and parsing it.

Writes a seeded mbox (by default 10,000 messages, a third sent by the author: replies that quote the message they
answer and end with a signature, one in twenty with an attachment; the rest from other people) with the standard
library's `mailbox`, beside ten ordinary notes, in a temporary notes folder. Then, on a fresh persistent instance
(sqlite, as `make ui` runs): the sensor's first tick (which hashes the mailbox file and registers its one
partition), a steady tick; registering the folder's partitions as the CLI does; `parse_note` on the mailbox (the
author's messages, quotes and signatures cut by mail-parser-reply); and raw_notes materialized for its partition
(parse, the warehouse row, the cost estimate), which is the note run's parsing step. The mailbox is one partition:
at the project's measured cost of a run (README, "Measured"), a partition per message would cost more than the
messages do.

    python bench/mailbox_scale.py --messages 10000

(Named so as not to shadow the standard library's `mailbox` for the scripts beside it.)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import dagster as dg
from fine_tune_dag_testkit.notes import SAMPLE_TOPICS, write_sample_notes
from fine_tune_dag_testkit.sources import AUTHOR, AUTHOR_ADDRESS, mail, write_mbox
from results import Row, add_json_argument, peak_rss_mib, report
from scale import TICK_BUDGET_S, tick

from fine_tune_dag.assets.ingest import raw_notes
from fine_tune_dag.cli import register_note_partitions
from fine_tune_dag.core.ingest.base import SourceSettings
from fine_tune_dag.core.ingest.notes import note_partition_key, parse_note
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.sources import SourcesResource

SENTENCES = [
    "Here is the thing: the {topic} can wait until the weekend.",
    "I have looked at the {topic} twice now and it is better than it sounds.",
    "Bring it in on Tuesday, before the market, and I will have a look.",
    "True enough, nobody likes to hear that the {topic} is worn out.",
    "Small tools, small wins; the {topic} needs patience more than parts.",
    "The Scold is blowing again, so the shop door stays shut and the kettle stays on.",
    "Moth has opinions about the {topic}, and most of them are right.",
    "I would rather tell you now than charge you twice in spring.",
]
SIGNATURE = "Thanks,\nIlona\n--\nThe Slow Wheel, 9 Ferry Lane, Kettleford"


def paragraph(rng: random.Random) -> str:
    topic = rng.choice(SAMPLE_TOPICS)
    return " ".join(rng.choice(SENTENCES).format(topic=topic) for _ in range(rng.randint(2, 6)))


def letters(messages: int, author_share: float, seed: int) -> Iterator[EmailMessage]:
    """The seeded mailbox's messages, made one at a time as `mailbox` writes them."""
    rng = random.Random(seed)
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    for index in range(messages):
        when = start + timedelta(minutes=97 * index)
        topic = rng.choice(SAMPLE_TOPICS)
        if rng.random() < author_share:
            quoted = "\n".join(f"> {line}" for line in paragraph(rng).split(". "))
            body = "\n\n".join(paragraph(rng) for _ in range(rng.randint(1, 3)))
            body += (
                f"\n\n{SIGNATURE}\n\nOn {when:%a, %d %b %Y at %H:%M}, Hanne Berg <hanne@example.org> wrote:\n{quoted}\n"
            )
            attachment = ("notes.txt", paragraph(rng)) if index % 20 == 0 else None
            sender = f"{AUTHOR} <{AUTHOR_ADDRESS}>"
            yield mail(sender, f"Re: the {topic}", body, when, f"<{index}@bench>", attachment)
        else:
            yield mail("Hanne Berg <hanne@example.org>", f"The {topic}", paragraph(rng), when, f"<{index}@bench>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--author-share", type=float, default=1 / 3, help="share of the messages the author sent")
    parser.add_argument("--seed", type=int, default=0)
    add_json_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        notes, data, home = root / "notes", root / "data", root / "dagster_home"
        write_sample_notes(notes, 10)
        path = notes / "mail" / "archive.mbox"
        path.parent.mkdir()
        started = time.perf_counter()
        write_mbox(path, letters(args.messages, args.author_share, args.seed))
        print(
            f"wrote {args.messages} messages, {path.stat().st_size / 1e6:.1f} MB, in {time.perf_counter() - started:.1f} s"
        )
        sources = SourcesResource(author_addresses=AUTHOR_ADDRESS, author_names=AUTHOR)
        defs = build_definitions(str(notes), str(data), policy=AutomationPolicy(settle_seconds=0), sources=sources)
        home.mkdir()
        with dg.DagsterInstance.local_temp(str(home)) as instance:
            first_tick_s, cursor, requested = tick(defs, instance, None)
            steady_tick_s, cursor, _ = tick(defs, instance, cursor)
            print(
                f"sensor: first tick {first_tick_s:.2f} s ({requested} runs), steady {steady_tick_s:.2f} s", flush=True
            )
            started = time.perf_counter()
            register_note_partitions(instance, notes)
            register_s = time.perf_counter() - started
            started = time.perf_counter()
            note = parse_note(path, notes, SourceSettings.from_lists(AUTHOR_ADDRESS, AUTHOR))
            parse_s = time.perf_counter() - started
            print(
                f"parse_note: {parse_s:.1f} s, {note.metadata['by_author']} messages, {len(note.text):,} characters",
                flush=True,
            )
            started = time.perf_counter()
            result = dg.materialize(
                [raw_notes],
                partition_key=note_partition_key("mail/archive.mbox"),
                resources=defs.resources,
                instance=instance,
            )
            raw_notes_s = time.perf_counter() - started
            assert result.success
    per_message_ms = 1000 * parse_s / args.messages
    report(
        [
            Row(
                "mailbox",
                f"sensor first tick, {args.messages:,}-message mailbox + 10 notes, vs ≤ {TICK_BUDGET_S:g} s",
                first_tick_s,
                TICK_BUDGET_S,
                TICK_BUDGET_S / first_tick_s,
                "s",
                target=1.0,
            ),
            Row(
                "mailbox",
                "sensor steady tick, vs ≤ 10 s",
                steady_tick_s,
                TICK_BUDGET_S,
                TICK_BUDGET_S / steady_tick_s,
                "s",
                target=1.0,
            ),
            Row("mailbox", "register the folder's partitions (CLI)", register_s, None, None, "s"),
            Row(
                "mailbox",
                f"parse_note on the mailbox ({note.metadata['by_author']:,} by the author)",
                parse_s,
                None,
                None,
                "s",
            ),
            Row("mailbox", "parse_note per message in the mailbox", per_message_ms, None, None, "ms"),
            Row("mailbox", "raw_notes for the mailbox's partition: wall", raw_notes_s, None, None, "s"),
            Row("mailbox", "peak RSS of the process (writing, ticks, parsing)", peak_rss_mib(), None, None, "MiB"),
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
