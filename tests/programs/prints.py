from scoop import futures


def talk(i):
    print(f"task {i} says hi", flush=True)
    return i


if __name__ == "__main__":
    print(sum(futures.map(talk, range(4))))
