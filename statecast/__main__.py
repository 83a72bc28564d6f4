from statecast.cli import main

raise SystemExit(main())
