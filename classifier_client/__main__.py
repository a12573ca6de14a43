"""``python -m classifier_client``: the ``classify`` command line (classifier_client.cli)."""
import sys

from classifier_client.cli import main

sys.exit(main())
