"""Hello world. The whole `python -m scoop -n 2 bench/workloads/hello.py` run
(launch, workers up, program, shutdown) is timed from outside by bench/run.py."""
from scoop import futures  # noqa: F401  (a real SCOOP program imports it)

if __name__ == "__main__":
    print("hello", flush=True)
