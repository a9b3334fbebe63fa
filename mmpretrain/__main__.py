from mmpretrain.cli import main

raise SystemExit(main())
