# The README's two commands:  make demo  (set up + run the flywheel end to end)  and  make test.
.PHONY: setup demo test down status compose-test
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
# the team deployment (docker-compose.yaml) built, brought up, used end to end and torn down (docs/platform.md: 17 min cold, 9 min cached)
compose-test:
	bash scripts/compose-test.sh
