import sys

from data_shards.cli import main

sys.exit(main())
