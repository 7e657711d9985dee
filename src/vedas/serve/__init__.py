"""``vedas serve``: the batched latent engine behind an OpenAI-compatible HTTP API.

| module     | the idea |
|------------|----------|
| `protocol` | the OpenAI chat format in and out: a request body becomes a `ChatJob`; errors name the field |
| `media`    | where images may come from (no local files by default) and bounded decoding |
| `batcher`  | dynamic batching: a queue and one worker thread that runs jobs in batches |
| `runner`   | the arrival checks (`admit`), one batch of jobs through `VedasModel.generate`, `stop`, streaming |
| `app`      | the FastAPI app: routes, body limit, disconnects, error objects |
| `cli`      | the `vedas serve` subcommand (binds the socket, runs uvicorn) |
| `replicas` | `--replicas N`: the same app as a Ray Serve deployment, one replica per device |

How to run it, what a request may hold and the security model: docs/serve.md. Needs the ``serve`` extra.
"""
