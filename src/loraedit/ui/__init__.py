"""`loraedit ui`: the web app (Gradio), bound to 127.0.0.1 unless told otherwise.

Three modules, one job each:

* `session.py`: one browser tab's private folder (`loraedit.uploads`) and what the user gave and made;
* `steps.py`: the workflow's steps (load a clip, prompts, masks, edited frames, captions, train and sample,
  metrics) as plain functions over a session, calling `api`, `masks` and `evaluate`; no Gradio in them, so
  they are tested without a browser;
* `app.py`: the page (Gradio Blocks), the wiring of buttons to steps, errors shown as one-line messages,
  the live training display, and `serve()`.

Importing this package does not import Gradio (it is the optional `ui` extra).
"""
