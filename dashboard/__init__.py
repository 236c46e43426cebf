"""The Dash dashboard that browses recorded runs (see DESIGN.md, "Dashboard")."""
