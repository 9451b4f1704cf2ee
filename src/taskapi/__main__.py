from taskapi.cli import main

raise SystemExit(main())
