from tiger._cli import main

raise SystemExit(main())
