from lit_align.thinker.cli import main

main()
