"""``vedas serve``: the batched latent engine behind an OpenAI-compatible HTTP API.

| module     | the idea |
|------------|----------|
| `protocol` | the OpenAI chat format in and out: a request body becomes a `ChatJob`; errors name the field |
| `batcher`  | dynamic batching: a queue and one worker thread that runs jobs in batches |
| `runner`   | one batch of jobs through `VedasModel.generate`, with token counts |
| `app`      | the FastAPI app: routes, body limit, disconnects, error objects |
| `cli`      | the `vedas serve` subcommand (binds the socket, runs uvicorn) |

How to run it and what a request may hold: docs/serve.md. Needs the ``serve`` extra.
"""
