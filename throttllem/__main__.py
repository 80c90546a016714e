from throttllem.cli import main

raise SystemExit(main())
