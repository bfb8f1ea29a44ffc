"""The docker-compose cluster, run for real: ``python -m paysaga.compose`` (scripts/dev.py compose-test).

engine    a Docker engine: the running one, or one installed and started for the test and then
          stopped, with the host put back as it was
images    the base image: python:3.11-slim, or one built from Debian packages where no
          container registry is reachable
project   one compose project (default or production): build, up, down, one-off containers
checks    what a user relies on, checked from the host through the published port
"""
