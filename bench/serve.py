"""`fine-tune-dag serve` under load: the served champion streamed to 8 concurrent clients against one at a time,
time to first token, and a run of requests while the champion is swapped mid-run.

The champion is a LoRA adapter on the bundled model (freshly initialised: the adapter path is exercised, the text
is the base model's); a second one is promoted halfway through the swap run. Clients are the official `openai`
package streaming over HTTP from threads of this process, the server is the real app on 127.0.0.1.

    python bench/serve.py --requests 16 --clients 8 --max-tokens 48 --swap-requests 200 [--json rows.json]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import uvicorn
from generation import MODELS, synthesis_prompts
from peft import LoraConfig, get_peft_model
from results import Row, add_json_argument, machine, peak_rss_mib, report

from fine_tune_dag.apps.serve.server import Models, recorder, serve_app
from fine_tune_dag.core.models.adapters import save_generation_settings
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model
from fine_tune_dag.core.serving.engine import Engine
from fine_tune_dag.core.store.registry import promote
from fine_tune_dag.core.store.warehouse import Warehouse


@dataclass
class Tally:
    tokens: int = 0
    first_token_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    answered: int = 0


def adapter(base: Path, folder: Path) -> Path:
    """A LoRA adapter as training saves one, with greedy decoding saved as its defaults."""
    model = get_peft_model(load_causal_lm(base), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    save_generation_settings(folder, GenerationSettings(temperature=0.0))
    return folder


def crown(db: Warehouse, folder: Path, when: datetime) -> None:
    db.insert_rows("adapters", pd.DataFrame([{"version": folder.name, "path": str(folder), "created_at": when}]))
    promote(db, folder.name, 1.0, None, None, "bench", "bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(url: str, question: str, max_tokens: int, tokenizer: Any, tally: Tally, lock: threading.Lock) -> None:
    """One streamed answer from the champion; its tokens, time to first token, or its failure go in `tally`."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    started = time.perf_counter()
    first, pieces = None, []
    try:
        for event in client.chat.completions.create(
            model="champion", messages=[{"role": "user", "content": question}], max_tokens=max_tokens, stream=True
        ):
            if event.choices and event.choices[0].delta.content:
                first = first or time.perf_counter() - started
                pieces.append(event.choices[0].delta.content)
        with lock:
            tally.answered += 1
            tally.tokens += len(tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])
            tally.first_token_s.append(first or time.perf_counter() - started)
    except Exception as error:  # counted, not raised: the row says how many failed
        with lock:
            tally.failures.append(repr(error))


def run_clients(
    url: str, questions: list[str], clients: int, max_tokens: int, tokenizer: Any, tally: Tally | None = None
) -> tuple[Tally, float]:
    """Each question once, by `clients` threads taking the next question as they finish."""
    tally, lock, queue = tally or Tally(), threading.Lock(), list(reversed(questions))

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                question = queue.pop()
            stream(url, question, max_tokens, tokenizer, tally, lock)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests in the one-at-a-time and concurrent runs")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--swap-requests", type=int, default=200)
    add_json_argument(parser)
    args = parser.parse_args()
    base = resolve_model(BUNDLED_MODEL, MODELS).path
    tokenizer = load_tokenizer(base)
    questions = [
        tokenizer.decode(p, skip_special_tokens=True)[-400:]
        for p in synthesis_prompts(tokenizer, Path(__file__).resolve().parents[1] / "data" / "notes", args.requests)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        folder = Path(scratch)
        db = Warehouse(folder / "warehouse.duckdb")
        crown(db, adapter(base, folder / "v1"), datetime(2026, 1, 1))
        second = adapter(base, folder / "v2")
        engine = Engine(base, recorder(db), batch_size=args.clients, queue_size=4 * args.clients)
        engine.start()
        engine.ready.wait()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(serve_app(engine, Models(db, folder / "index")), port=port, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        run_clients(url, questions[:2], 1, 4, tokenizer)  # first-call set-up, on no side
        alone, alone_s = run_clients(url, questions, 1, args.max_tokens, tokenizer)
        together, together_s = run_clients(url, questions, args.clients, args.max_tokens, tokenizer)
        swap_tally = Tally()

        def swap_when_half_answered() -> None:
            while swap_tally.answered < args.swap_requests // 2:
                time.sleep(0.05)
            crown(db, second, datetime(2026, 1, 2))

        threading.Thread(target=swap_when_half_answered, daemon=True).start()
        swap_questions = [questions[i % len(questions)] for i in range(args.swap_requests)]
        run_clients(url, swap_questions, args.clients, args.max_tokens, tokenizer, swap_tally)
        swapped = len(db.query("SELECT * FROM champion_history")) == 2
        server.should_exit = True
        engine.stop()
    alone_rate, together_rate = alone.tokens / alone_s, together.tokens / together_s
    ttft = statistics.median(together.first_token_s)
    print(
        f"serve: the bundled model with a LoRA champion, {args.requests} requests of up to {args.max_tokens} tokens; "
        f"{machine()}\n\none at a time: {alone.tokens} tokens in {alone_s:.1f} s ({alone_rate:.1f}/s), median time to "
        f"first token {statistics.median(alone.first_token_s):.2f} s\n{args.clients} clients: {together.tokens} tokens "
        f"in {together_s:.1f} s ({together_rate:.1f}/s), median time to first token {ttft:.2f} s\n"
        f"swap run: {swap_tally.answered} of {args.swap_requests} answered, {len(swap_tally.failures)} failed, "
        f"champion swapped mid-run: {swapped}; peak RSS {peak_rss_mib():.0f} MiB\n"
    )
    lost = args.swap_requests - swap_tally.answered
    rows = [
        Row(
            "serve",
            f"tokens/s, {args.clients} streaming clients vs one at a time",
            together_rate,
            alone_rate,
            together_rate / alone_rate,
            "tokens/s",
            target=4.0,
        ),
        Row("serve", f"time to first token, median, {args.clients} clients", ttft, None, None, "s"),
        Row(
            "serve",
            f"requests answered of {args.swap_requests}, champion swapped mid-run",
            swap_tally.answered,
            args.swap_requests,
            swap_tally.answered / args.swap_requests,
            "requests",
            target=1.0,
            unmet=""
            if swapped and not swap_tally.failures and not lost
            else "a request failed or the swap did not happen",
        ),
    ]
    report(rows, args.json)


if __name__ == "__main__":
    main()
