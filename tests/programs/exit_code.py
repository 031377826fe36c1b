import sys

from scoop import futures

print(futures.submit(abs, -5).result())
sys.exit(int(sys.argv[1]))
