from infra.commands import main

raise SystemExit(main())
