"""The smallest SCOOP program: `python -m scoop -n 2 hello.py`."""
from scoop import futures


def hello(i):
    return f"hello from task {i}"


if __name__ == "__main__":
    for line in futures.map(hello, range(4)):
        print(line)
