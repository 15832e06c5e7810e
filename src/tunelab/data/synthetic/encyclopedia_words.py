"""The encyclopedia's vocabulary: the fixed word lists its invented world is drawn from.

Kept apart from the code that draws from them so the lists can grow or be re-worded without touching how the
world is built; changing a list changes every seed's world, so they are data to edit with care. Name parts
carry their pinyin ('青qing'), so a drawn place or person also gets its English name (Qingchuan, Li Wei).
"""

from __future__ import annotations


def _pool(spec: str) -> dict[str, str]:
    """'青qing 云yun' -> {'青': 'qing', '云': 'yun'}: characters with their pinyin, for English names."""
    return {item[0]: item[1:] for item in spec.split()}


PLACE_HEAD = _pool("青qing 云yun 石shi 平ping 安an 宁ning 东dong 西xi 南nan 北bei 永yong 新xin 长chang "
                   "金jin 白bai 黄huang 红hong 玉yu 凤feng 龙long 临lin 洛luo 嘉jia 昌chang 德de 兴xing "
                   "丰feng 华hua 松song 柳liu 梧wu 桂gui 梅mei 鹤he 鹿lu 雁yan 霞xia 春chun 秋qiu 枫feng "
                   "竹zhu 茶cha 棠tang 泰tai 银yin 紫zi 翠cui 丹dan")
PLACE_TAIL = _pool("川chuan 山shan 河he 阳yang 江jiang 林lin 泉quan 溪xi 桥qiao 城cheng 岭ling 湖hu 州zhou "
                   "源yuan 口kou 坪ping 塘tang 湾wan 岗gang 峰feng 谷gu 台tai 关guan 岩yan 门men 田tian "
                   "坝ba 浦pu 庄zhuang 沟gou")
PROVINCE_TAIL = "原陵泽宁陇岳郡望渠衡"
RIVER_TAIL = "澜沙潭涧漪沧浔泷"
SURNAME = _pool("李li 王wang 张zhang 刘liu 陈chen 杨yang 赵zhao 周zhou 吴wu 徐xu 孙sun 胡hu 朱zhu 高gao "
                "何he 郭guo 罗luo 梁liang 宋song 郑zheng 谢xie 韩han 唐tang 冯feng 于yu 董dong 程cheng "
                "曹cao 袁yuan 邓deng 许xu 傅fu 沈shen 曾zeng 彭peng 苏su 卢lu 蒋jiang 蔡cai 贾jia 丁ding "
                "魏wei 薛xue 叶ye 余yu 潘pan 杜du 戴dai 夏xia 钟zhong 汪wang 任ren 姜jiang 范fan 方fang "
                "姚yao 谭tan 廖liao 邹zou 熊xiong 陆lu 孔kong 崔cui 康kang 邱qiu 秦qin 顾gu 侯hou 邵shao "
                "孟meng 段duan 钱qian 汤tang 尹yin 易yi 常chang 乔qiao 贺he 龚gong 严yan")
GIVEN_MALE = _pool("伟wei 明ming 文wen 建jian 国guo 志zhi 立li 光guang 振zhen 俊jun 学xue 宏hong 瑞rui "
                   "思si 鹏peng 涛tao 毅yi 诚cheng 斌bin 博bo 翰han 哲zhe 远yuan 卓zhuo 守shou 仁ren "
                   "启qi 承cheng 鸿hong 霖lin 树shu 培pei 之zhi 仲zhong 其qi 达da 海hai 章zhang")
GIVEN_FEMALE = _pool("静jing 慧hui 丽li 婉wan 秀xiu 雪xue 芳fang 淑shu 英ying 如ru 君jun 敏min 琳lin 萍ping "
                     "洁jie 颖ying 佩pei 思si 文wen 玉yu")

# (name suffix, genus in Chinese, genus in Latin, family, Latin neuter?, group, life form)
SPECIES_BASES = [
    ("杜鹃", "杜鹃花属", "Rhododendron", "杜鹃花科", True, "shrub", "常绿灌木"),
    ("兰", "兰属", "Cymbidium", "兰科", True, "herb", "多年生草本植物"),
    ("冷杉", "冷杉属", "Abies", "松科", False, "tree", "常绿乔木"),
    ("报春", "报春花属", "Primula", "报春花科", False, "herb", "多年生草本植物"),
    ("秋海棠", "秋海棠属", "Begonia", "秋海棠科", False, "herb", "多年生草本植物"),
    ("槭", "槭属", "Acer", "无患子科", True, "tree", "落叶乔木"),
    ("百合", "百合属", "Lilium", "百合科", True, "herb", "多年生草本植物"),
    ("龙胆", "龙胆属", "Gentiana", "龙胆科", False, "herb", "一年生草本植物"),
    ("山雀", "山雀属", "Parus", "山雀科", False, "bird", "小型鸟类"),
    ("噪鹛", "噪鹛属", "Garrulax", "噪鹛科", False, "bird", "中型鸟类"),
    ("疣螈", "疣螈属", "Tylototriton", "蝾螈科", False, "amphibian", "有尾两栖动物"),
    ("树蛙", "树蛙属", "Rhacophorus", "树蛙科", False, "amphibian", "无尾两栖动物"),
    ("角蟾", "角蟾属", "Megophrys", "角蟾科", False, "amphibian", "无尾两栖动物"),
    ("高原鳅", "高原鳅属", "Triplophysa", "条鳅科", False, "fish", "淡水鱼类"),
    ("锦蛇", "锦蛇属", "Elaphe", "游蛇科", False, "reptile", "无毒蛇类"),
    ("凤蝶", "凤蝶属", "Papilio", "凤蝶科", False, "insect", "大型蝴蝶"),
]
PLANT_GROUPS = ("shrub", "herb", "tree")
SIZE = {  # group -> (label, low, high, unit, decimals)
    "shrub": ("株高", 1.0, 5.0, "米", 1), "herb": ("株高", 10, 80, "厘米", 0), "tree": ("树高", 10, 40, "米", 0),
    "bird": ("体长", 10, 30, "厘米", 0), "amphibian": ("体长", 4, 15, "厘米", 0),
    "fish": ("体长", 8, 20, "厘米", 0), "reptile": ("全长", 0.8, 2.0, "米", 1), "insect": ("翅展", 8, 14, "厘米", 0),
}
HABITAT = {
    "shrub": ["山地常绿阔叶林中", "高山灌丛中", "石灰岩山坡上"], "herb": ["林下阴湿处", "林缘草地上", "高山草甸上"],
    "tree": ["针阔混交林中", "亚高山针叶林中", "山地阔叶林中"], "bird": ["山地森林中", "竹林中", "次生林中"],
    "amphibian": ["山间溪流附近", "林下湿地中", "山区稻田附近"], "fish": ["高原溪流中", "山区河流中"],
    "reptile": ["山区农田附近", "低山丘陵地带"], "insect": ["山地林缘", "溪谷花丛中"],
}
LOOKS = {
    "plant": ["花冠{c}色，花朵簇生于枝顶", "花{c}色，常数朵聚生", "叶片革质，花{c}色"],
    "tree": ["树皮{c}色，叶片掌状分裂", "树皮{c}色，球果长圆形"],
    "bird": ["头顶{c}色，两颊白色", "背部{c}色，腹部淡黄色"],
    "amphibian": ["背面{c}色，皮肤较粗糙", "体背{c}色，散有深色斑点"],
    "fish": ["体背{c}色，带有不规则斑纹"], "reptile": ["体背{c}色，具四条纵纹"],
    "insect": ["翅面{c}色，后翅具尾突"],
}
COLORS = ["白", "淡紫", "粉红", "鲜红", "金黄", "紫红", "灰褐", "墨绿", "橄榄绿", "深褐"]
NICKNAMES = {
    "plant": ["映山红", "满山红", "山灯笼", "石上春", "岩上雪", "云中仙", "玉如意", "雪里娇"],
    "tree": ["青松王", "红叶树", "老鹰树"], "bird": ["山雀子", "白脸儿", "林中哨", "画眉子"],
    "amphibian": ["石蛤蟆", "山娃娃", "火龙", "绿衣郎"], "fish": ["石板鱼", "花鳅"],
    "reptile": ["菜花蛇", "乌梢子"], "insect": ["金凤子", "玉带蝶"],
}
STATUS = [("无危", "LC"), ("近危", "NT"), ("易危", "VU"), ("濒危", "EN"), ("极危", "CR")]
# (name suffix, class, English suffix, N atoms, O atoms)
COMPOUND_CLASSES = [
    ("碱", "生物碱", "ine", (1, 2), (1, 5)), ("素", "天然产物", "in", (0, 0), (2, 7)),
    ("醇", "醇类化合物", "ol", (0, 0), (1, 4)), ("酮", "酮类化合物", "one", (0, 0), (2, 5)),
    ("苷", "糖苷类化合物", "oside", (0, 0), (6, 12)), ("酸", "有机酸", "ic acid", (0, 0), (2, 6)),
]
APPEARANCE = ["白色晶体", "无色针状晶体", "淡黄色粉末", "无色油状液体", "白色结晶性粉末", "黄色片状晶体"]
SOLUBILITY = ["易溶于乙醇和氯仿，难溶于水", "微溶于水，易溶于甲醇", "可溶于热水和乙醇", "难溶于水，溶于乙醚和丙酮"]
ACTIVITY = ["具有一定的抗菌活性", "具有镇痛作用", "可用作天然染料", "对多种害虫有驱避作用", "具有抗氧化活性",
            "对神经系统有较强的毒性"]
SPECIALTY = ["茶叶", "柑橘", "蚕丝", "陶瓷", "竹编", "核桃", "板栗", "猕猴桃", "蜂蜜", "米酒", "木雕", "砚台",
             "药材", "腊肉", "油桐", "花椒"]
DYNASTY = ["秦代", "汉代", "晋代", "隋代", "唐代", "宋代", "元代", "明代", "清代"]
WORK_WORDS = ["青山", "远帆", "春水", "北窗", "松风", "晚霞", "雪夜", "长河", "渡口", "灯火", "故园", "归雁"]
WORK_SUFFIX = ["集", "记", "录", "书", "谣", "志", "纪行", "杂记"]
OCCUPATIONS = {"botanist": ("植物学家", 22), "zoologist": ("动物学家", 18), "chemist": ("化学家", 20),
               "engineer": ("铁路工程师", 10), "writer": ("作家", 30)}
DIRECTIONS = ["东", "西", "南", "北", "中"]
ATOMIC_MASS = {"C": 12.011, "H": 1.008, "N": 14.007, "O": 15.999}
