from notellm.cli import main

main()
