# Shorthands for the README's two commands.
.PHONY: demo test setup
demo:
	python3 dev.py demo
test:
	python3 dev.py test
setup:
	python3 dev.py setup
