from scoop import futures


def inner(x):
    raise RuntimeError(f"inner failed on {x}")


def outer(x):
    return futures.submit(inner, x).result()


if __name__ == "__main__":
    futures.submit(outer, 42).result()
