"""The Dash dashboard that browses recorded runs (see docs/design.md, "Dashboard").

    probe dashboard RUN [RUN ...] [--port 8050] [--host 127.0.0.1] [--debug]

Modules, one job each:
  data     the runs served (by id, never by path) and the slices the views read, cached
  figures  plotly figures from numpy arrays (pure functions)
  state    the view state <-> the URL's query string
  views    what each view shows for a state (figures, messages), callable without Dash
  app      create_app(run_paths): layout and thin callbacks
  cli      the `probe dashboard` subcommand and serve()
"""
