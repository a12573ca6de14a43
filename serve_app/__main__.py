"""``python -m serve_app``: the service in the foreground (serve_app.run), with Ray Serve's throughput switches on.

The switches (serve_app.switches) go into the environment first: Ray Serve reads them when it is imported, in
every process, so serve_app.run (which imports Ray) is imported only after. A value already set wins.
"""
import os

from serve_app.switches import apply_default_switches

if __name__ == "__main__":
    apply_default_switches(os.environ)
    from serve_app.run import main  # after the switches are set: see above

    main()
