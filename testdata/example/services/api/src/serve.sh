#!/bin/sh
# A tiny "service": answers with its version.
if [ "$1" = "--check" ]; then
  echo "api ok"
  exit 0
fi
while true; do
  echo "api $(cat /srv/VERSION)"
  sleep 60
done
