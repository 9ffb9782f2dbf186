"""`loraedit ui`: the web app (Gradio), bound to 127.0.0.1 unless told otherwise.

One job per module:

* `session.py`: one browser tab's private folder (`loraedit.uploads`) and what the user gave and made;
* `settings.py`: how the app was started, what the page's fields hold, what a job hands back;
* `steps.py` (the clip, the example, edited frames, captions), `prompts.py` (clicks, boxes, masks) and
  `jobs.py` (train and sample on the resident model of `models.py`, cancel, resume): the workflow as plain
  functions over a session, calling `api`, `masks` and `evaluate`; no Gradio in them, so they are tested
  without a browser;
* `history.py` ("my edits"), `access.py` (logins), `cleanup.py` (--keep-hours), `display.py` (what the page
  shows of errors, progress and results);
* `app.py`: the page (Gradio Blocks), the wiring of buttons to steps, errors shown as one-line messages,
  the live training display, and `serve()`.

Importing this package does not import Gradio (it is the optional `ui` extra).
"""
