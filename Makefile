# The README's two commands:  make demo  (set up + run the flywheel end to end)  and  make test.
.PHONY: setup demo test down status
setup:
	bash scripts/setup.sh
demo: setup
	.venv/orch/bin/clinasr demo
test: setup
	bash scripts/test.sh
down:
	.venv/orch/bin/clinasr platform down
status:
	.venv/orch/bin/clinasr platform status
