from kzoo.cli.main import main

raise SystemExit(main())
