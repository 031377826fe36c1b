from scoop import futures


def sq(x):
    return x * x


if __name__ == "__main__":
    print(list(futures.map(sq, range(5))))
    print(futures.submit(sq, 4).result())
    print(list(futures.map(sq, range(3))))
