"""Promotion hook: brings the registry's adapters and champion to the vLLM server in deploy/vllm/.

It reads the warehouse, so it runs where the data volume is mounted, e.g. in the code server's pod
(deploy/ is not in the image, so the file goes in on stdin):

    kubectl -n dagster exec -i deploy/<code server> -- python - move --url http://fine-tune-dag-vllm:8000 \\
      < deploy/vllm/promote.py

`move` points the running server's `champion` alias at the current champion (unload, then load; no restart).
`args` prints a JSON patch that sets the Deployment's arguments to every version plus the alias; applying it
restarts vLLM with them, which is how a newly trained version becomes servable:

    kubectl -n dagster patch deployment fine-tune-dag-vllm --type=json -p "$(kubectl -n dagster exec -i \\
      deploy/<code server> -- python - args < deploy/vllm/promote.py)"
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request

from fine_tune_dag.core.models.resolution import model_cache_name
from fine_tune_dag.core.serving.vllm import UNLOAD_PATH, promotion_requests, serve_args
from fine_tune_dag.core.store.registry import current_champion, main_line_versions
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.settings import ProjectSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["move", "args"])
    parser.add_argument("--url", default="http://fine-tune-dag-vllm:8000", help="the vLLM Service (move)")
    parser.add_argument("--port", type=int, default=8000, help="the port vLLM listens on (args)")
    options = parser.parse_args()
    settings = ProjectSettings.from_environment()
    db = Warehouse(settings.layout.warehouse)
    champion = current_champion(db)
    if champion is None:
        raise SystemExit("no champion in the registry yet: nothing to serve as 'champion'")
    adapters = {row.version: row.path for row in main_line_versions(db).itertuples()}
    adapters[champion.version] = champion.path
    if options.action == "args":
        base = str(settings.layout.models / model_cache_name(settings.base_model))
        args = serve_args(base, adapters, champion.version, options.port)
        print(json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": args}]))
        return
    for path, body in promotion_requests(adapters, champion.version):
        request = urllib.request.Request(
            options.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                print(path, response.status, response.read().decode())
        except urllib.error.HTTPError as error:
            if path != UNLOAD_PATH:
                raise
            print(path, error.code, "(the alias was not loaded; loading it)")


if __name__ == "__main__":
    main()
