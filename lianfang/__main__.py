from lianfang.cli import main

main()
