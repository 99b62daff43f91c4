"""The status UI: server-rendered pages of what one pilotfish process holds, kept live by a
streamed feed (see docs/ui.md). Components mount it on their HTTP ports (`mount.with_ui`)
and describe themselves to it through `Stack.reports` (shapes in `reports`)."""
