from molserve.cli import main

raise SystemExit(main())
